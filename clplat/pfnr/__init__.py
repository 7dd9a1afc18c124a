"""PFNR (progressive Fourier neural representation): sequential video INR with winning
subnetworks. The strategy is ``clplat/strategies/pfnr.py``, the backbone ``clplat/backbones/nerv.py``;
this package holds the video evaluation, the reports and ``python -m clplat.pfnr decode``.
See ``docs/pfnr.md``."""
