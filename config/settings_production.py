"""Production settings: DJANGO_SETTINGS_MODULE=config.settings_production.

Everything in config.settings (read from the environment), plus what only production turns on, each with the safe
default; `manage.py check --deploy --fail-level WARNING` passes with them. A stack on plain HTTP on this machine
(make stack) relaxes them with SECURE_SSL_REDIRECT=false SESSION_COOKIE_SECURE=false CSRF_COOKIE_SECURE=false.
Run `manage.py collectstatic` before starting: static files are served by WhiteNoise from STATIC_ROOT.
"""

from django.core.exceptions import ImproperlyConfigured

from config.settings import *  # noqa: F403
from config.settings import DEBUG, env

if DEBUG:
    raise ImproperlyConfigured(
        "config.settings_production runs with DEBUG off: unset DEBUG, or develop with config.settings."
    )

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

# Staff sign in to the admin with a password and a TOTP code (manage.py staff_totp <username> gives the device).
STAFF_2FA_REQUIRED = env.bool("STAFF_2FA_REQUIRED", default=True)

# HTTPS only. Behind a proxy that terminates TLS, set SECURE_PROXY_SSL_HEADER=true if (and only if) the proxy sets
# X-Forwarded-Proto and drops any the client sent; otherwise the redirect loops or can be fooled.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
if env.bool("SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Cookies over HTTPS only, out of reach of scripts (the CSRF cookie is read from the form, not by scripts).
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"

# Hashed, compressed static file names, cached for ever by browsers; needs `manage.py collectstatic` first.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
