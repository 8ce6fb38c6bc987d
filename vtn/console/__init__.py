"""The operator console: the VTN's web pages for issuing, watching and verifying demand response.

Served by the VTN process at ``/console/`` on its admin port, on the same store as the OpenADR
side, the admin API and the CLI, and through the same ``vtn.actions`` (so the same checks and the
same messages). ``web`` holds the routes, sessions and CSRF; ``views`` turns store data into what
the pages show (site-local times, the calendar); ``templates/`` and ``static/`` the pages, their
style and the pinned chart library (``static/vendor``, see ``static/vendor/vendor.lock.json``).
"""
