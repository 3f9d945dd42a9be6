"""The code location served to ``dagster-webserver`` / ``dagster-daemon``:
``dagster-webserver -m headwater.orchestrate.location`` with ``HEADWATER_HOME`` and
``DAGSTER_HOME`` set (``headwater up`` does this). Importing it builds the definitions of
the home named by ``HEADWATER_HOME``."""

from headwater.config import Home
from headwater.orchestrate.definitions import definitions

defs = definitions(Home.from_env())
