"""Small phantom datasets for tests: few lobes per large lesion, so every case places both lesion
classes at the first tries (the default clusters of 12-22 lobes need a 72^3 volume or more)."""

from src_training.phantom_cases import PhantomConfig

PHANTOM_40 = PhantomConfig(
    shape=(40, 40, 40),
    small_radius=(2, 3),
    large_radius=(5, 7),
    n_small=(2, 2),
    n_large=(1, 1),
    large_lobes=(4, 5),
)
PHANTOM_48 = PhantomConfig(
    shape=(48, 48, 48),
    small_radius=(2, 4),
    large_radius=(6, 9),
    n_small=(2, 3),
    n_large=(1, 1),
    large_lobes=(4, 5),
)

TINY_CHANNELS = "4,4,4,4,4,4,4,4"


def tiny_train_argv(ds, out, cache, *extra, batch_size=2, iters_per_epoch=2, val_cases=1) -> list[str]:
    """``train`` arguments for a network small enough for CPU tests (4 channels per layer, 33^3
    patches, no loader processes); ``extra`` flags come last, so they may override these."""
    return ["train", "--data", str(ds), "--out", str(out), "--cache", str(cache),
            "--channels", TINY_CHANNELS, "--patch-size", "33", "--batch-size", str(batch_size),
            "--iters-per-epoch", str(iters_per_epoch), "--device", "cpu", "--val-cases", str(val_cases),
            "--workers", "0", *extra]  # fmt: skip
