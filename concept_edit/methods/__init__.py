"""Method plug-ins. Importing this package registers every method (each registers itself once).

Methods import ``concept_edit.core`` only, never each other.
"""
from . import uce  # noqa: F401,E402
from . import esd  # noqa: F401,E402
from . import slider  # noqa: F401,E402
