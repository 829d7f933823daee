"""fire command-line scripts; installed as the package ``fastpnr.scripts`` and dispatched by ``fastpnr <command>``."""
