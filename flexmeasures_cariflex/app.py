"""The FlexMeasures app with the Cariflex plugin and configuration, for gunicorn:

gunicorn 'flexmeasures_cariflex.app:create_app()'
"""

from __future__ import annotations

from flask import Flask


def create_app() -> Flask:
    from flexmeasures.app import create

    from flexmeasures_cariflex.config import install_config_file, patch_flexmeasures_defaults

    patch_flexmeasures_defaults()
    # Pass our config file explicitly, so a stray ~/.flexmeasures.cfg cannot take over.
    return create(path_to_config=str(install_config_file()))
