"""Host-agnostic core of the v-prediction / zero-terminal-SNR toolkit.

Everything here imports only torch, numpy, safetensors and PyYAML (plus the standard library) and never a
host module, so that the ComfyUI nodes and the webui extension share one implementation.
"""

__version__ = "0.1.0"
