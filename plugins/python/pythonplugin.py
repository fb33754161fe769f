#!/usr/bin/env python3
"""pythonplugin: the Python dummy plugin of Kong #8531, served by kong-pdk's dedicated server.

In the access phase it sets the upstream request header `x-pythonplugin` to this server's pid,
so a response from reflection shows which plugin-server generation handled the request.
Run: `pythonplugin.py --kong-prefix DIR --socket-name pythonplugin.socket -g` (or `--dump`).
"""

import os

from kong_pdk.cli import start_dedicated_server

Schema = ({"message": {"type": "string"}},)
version = "0.1.0"
priority = 0


class Plugin(object):
    """One instance per plugin configuration; Kong starts it with StartInstance."""

    def __init__(self, config):
        self.config = config

    def access(self, kong):
        kong.service.request.set_header("x-pythonplugin", str(os.getpid()))


if __name__ == "__main__":
    start_dedicated_server("pythonplugin", Plugin, version, priority, Schema)
