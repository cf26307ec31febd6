"""XTTS-v2's audio rates and hops, named once. A leaf module (it imports nothing), so every layer
may use it, `data/` included.

The GPT and the DVAE work on 22.05 kHz audio, one audio code per 1024 samples (~21.5 codes/s);
the HiFiGAN decoder writes 24 kHz audio, 256 samples per frame of its input.
"""

GPT_SAMPLE_RATE = 22050  # the GPT's, DVAE's and speaker encoder's input; prepare writes clips at this rate
DECODER_SAMPLE_RATE = 24000  # the HiFiGAN decoder's output; prepare's decoder_copies are at this rate
SAMPLES_PER_CODE = 1024  # 22.05 kHz samples per GPT audio code (the DVAE's hop)
DECODER_HOP = 256  # 24 kHz samples per decoder frame: the generator's upsampling 8·8·2·2
CODES_PER_SECOND = GPT_SAMPLE_RATE / SAMPLES_PER_CODE
