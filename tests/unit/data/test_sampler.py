import numpy as np
import pytest

from xtts_ft.data.sampler import LengthBucketSampler


def _sampler(n=23, **kwargs):
    rng = np.random.default_rng(0)
    durations = rng.uniform(1, 11, n)
    languages = kwargs.pop("languages", ["en"] * n)
    return LengthBucketSampler(durations, languages, **{"batch_size": 2, "seed": 3, **kwargs}), durations


def test_every_sample_once_per_epoch_and_the_last_batch_filled_from_the_start():
    sampler, _ = _sampler(23, batch_size=4)  # 23 = 5 full batches + 3
    batches = sampler.epoch_batches(0)
    assert len(batches) == 6 and all(len(b) == 4 for b in batches)
    flat = [i for b in batches for i in b]
    assert sorted(set(flat)) == list(range(23))
    counts = np.bincount(flat)
    assert counts.sum() == 24 and (counts == 2).sum() == 1  # one sample repeated to fill the last batch


def test_deterministic_per_seed_and_epoch():
    a, _ = _sampler()
    b, _ = _sampler()
    assert a.epoch_batches(0) == b.epoch_batches(0)
    assert a.epoch_batches(0) != a.epoch_batches(1)
    c, _ = _sampler(seed=4)
    assert c.epoch_batches(0) != a.epoch_batches(0)


def test_restoring_mid_epoch_continues_where_the_full_iteration_was():
    sampler, _ = _sampler(10, batch_size=3)  # 4 batches per epoch
    full = [next(it) for it in [sampler.steps(0, 0)] for _ in range(7)]
    it = sampler.steps(1, 1)
    resumed = [next(it) for _ in range(2)]
    assert [(s.epoch, s.batch, s.micro_batches) for s in full[5:]] == [
        (s.epoch, s.batch, s.micro_batches) for s in resumed
    ]
    assert [(s.epoch, s.batch) for s in full] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]


def test_length_bucketing_cuts_padding():
    def padding(sampler, durations):
        return sum(
            len(b) * max(durations[b]) - sum(durations[b])
            for e in range(3)
            for b in map(np.array, sampler.epoch_batches(e))
        )

    bucketed, durations = _sampler(200, batch_size=4, bucket_batches=16)
    plain, _ = _sampler(200, batch_size=4, bucket_batches=0)
    assert padding(bucketed, durations) < 0.25 * padding(plain, durations)
    # Still every sample once per epoch, and batches not in sorted order.
    flat = [i for b in bucketed.epoch_batches(0) for i in b]
    assert sorted(flat) == list(range(200))
    firsts = [durations[b[0]] for b in bucketed.epoch_batches(0)]
    assert firsts != sorted(firsts)


def test_ranks_split_each_global_batch_like_accumulation_does():
    one, _ = _sampler(30, batch_size=2, grad_accum_steps=2)
    ranks = [_sampler(30, batch_size=2, world_size=2, rank=r)[0] for r in range(2)]
    steps_one = one.steps()
    steps_ranks = [r.steps() for r in ranks]
    for _ in range(10):  # across the epoch boundary (8 steps per epoch)
        single = next(steps_one)
        per_rank = [next(s) for s in steps_ranks]
        assert single.micro_batches == per_rank[0].micro_batches + per_rank[1].micro_batches
        assert [p.micro_offset for p in per_rank] == [0, 1] and single.micro_offset == 0
        assert all(len(m) == 2 for p in per_rank for m in p.micro_batches)  # nobody runs short


def test_language_weights_replay_a_fresh_share_each_epoch():
    languages = ["wo"] * 40 + ["en"] * 100
    sampler, _ = _sampler(140, languages=languages, batch_size=4, language_weights={"en": 0.2})
    epochs = [sampler.epoch_samples(e) for e in range(2)]
    for chosen in epochs:
        assert sum(1 for i in chosen if i < 40) == 40  # every Wolof clip
        assert sum(1 for i in chosen if i >= 40) == 20  # a 20 % draw of English
    assert set(epochs[0][40:]) != set(epochs[1][40:])
    doubled, _ = _sampler(140, languages=languages, batch_size=4, language_weights={"wo": 2.0, "en": 0})
    assert sorted(doubled.epoch_samples(0)) == sorted(list(range(40)) * 2)


def test_bad_language_weights_are_clear_errors():
    with pytest.raises(ValueError, match="language_weights name fr, absent"):
        _sampler(10, language_weights={"fr": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        _sampler(10, language_weights={"en": -1})
    with pytest.raises(ValueError, match="leave no sample"):
        _sampler(10, language_weights={"en": 0})
