"""flexforge: infrastructure-as-code for images made with FLUX.2."""

__version__ = "0.1.0"
