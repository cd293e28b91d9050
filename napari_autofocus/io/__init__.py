"""Files in and out: atomic writes with one permission policy, and the files a prediction is saved as."""
