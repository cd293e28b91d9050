"""Files in and out: NIfTI with its geometry (``nifti``), Decathlon and nnU-Net dataset folders
(``datasets``), atomic writes with one permission policy (``atomic``), the files a prediction is saved
as (``prediction_files``) and memory-mapped scratch arrays (``scratch``)."""
