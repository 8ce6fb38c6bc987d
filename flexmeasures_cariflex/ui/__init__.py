"""FlexMeasures' web UI, offline: the assets its pages load from public CDNs, served by the plugin.

``vendor.py`` fetches them at install time (exact versions from the npm registry, each package's
tarball checked against the integrity hash in ``vendor.lock.json``); ``offline.py`` serves them and
points FlexMeasures' pages and style sheet at them.
"""
