"""The code location of a home: the code server ``dagster api grpc -m
headwater.orchestrate.location`` serves it to the daemon and the UI, with ``HEADWATER_HOME`` and
``DAGSTER_HOME`` set (``headwater up`` does this: :mod:`headwater.orchestrate.server`).
Importing it builds the definitions of the home named by ``HEADWATER_HOME``."""

from headwater.config import Home
from headwater.orchestrate.definitions import definitions

defs = definitions(Home.from_env())
