"""The Qt-free state behind the widgets: one run and its result (``session``), which layer feeds
which channel (``inputs``), where models come from (``model_library``) and what Export writes
(``export``). Widgets are views over these."""
