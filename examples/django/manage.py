#!/usr/bin/env python
"""Django's command-line utility for the example project (run it from this folder).

    python manage.py runserver                 # Django's development server (WSGI: shop/wsgi.py)
    gunicorn shop.wsgi                         # WSGI, sync workers (add --threads 8 for threaded ones)
    hypercorn shop.asgi:application            # ASGI: streaming with disconnect cancellation
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
