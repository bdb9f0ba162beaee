"""TurboQuant KV-cache types for llama.cpp. The codec itself: tq_llamacpp.native."""
from . import native

__version__ = native.version()
