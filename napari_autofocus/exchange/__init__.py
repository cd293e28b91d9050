"""Model exchange: bioimage.io packages and MONAI bundles out, our own bioimage.io packages back in.

The formats' own tools (``bioimageio.spec``/``bioimageio.core``, ``monai``) are optional
(``pip install napari-autofocus[export]``) and imported only when an export runs.
"""
