"""adapterhub's library: the registry, adapter validation, base fingerprints, merging and training.

Front ends (``cli/``, ``server/``) import from here; nothing here imports click or flask.
"""

from .errors import AdapterHubError
from .location import open_registry
from .registry import AdapterVersion, LocalRegistry

__all__ = ["AdapterHubError", "AdapterVersion", "LocalRegistry", "open_registry"]
