"""Only for the native wheel: with MOE_CLIENT_NATIVE=1 the wheel carries
the transport module the build made (moe_client/_generated/_transport*.so,
which links the build machine's gRPC C++ library) and is tagged for this
interpreter and platform. Without it the wheel is pure Python (grpcio).
The metadata is in pyproject.toml."""
import os

from setuptools import setup
from setuptools.dist import Distribution

NATIVE = os.environ.get("MOE_CLIENT_NATIVE") == "1"


class _Distribution(Distribution):
    def has_ext_modules(self):
        return NATIVE


setup(distclass=_Distribution,
      package_data={"moe_client._generated": ["_transport*.so"]} if NATIVE else {})
