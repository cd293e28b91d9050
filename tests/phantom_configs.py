"""Small phantom datasets for tests: few lobes per large lesion, so every case places both lesion
classes at the first tries (the default clusters of 12-22 lobes need a 72^3 volume or more)."""

from src_training.phantom import PhantomConfig

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
