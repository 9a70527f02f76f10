"""Deployable Ray Serve applications used by the notebooks (``serve run apps.<module>:app``)."""
