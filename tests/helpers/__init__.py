"""What tests share that is not a fixture: settings, a local Hub stand-in, models in the released
formats, speech."""
