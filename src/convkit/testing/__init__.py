"""Contract suites, stubs and fixtures helpers that plugin authors reuse.

Import the contract classes from their modules (``convkit.testing.storage.StorageContract``, ...)
and subclass them in your tests, providing the fixtures each class documents.
"""

from convkit.testing.clock import FakeClock
from convkit.testing.services import service_url

__all__ = ["FakeClock", "service_url"]
