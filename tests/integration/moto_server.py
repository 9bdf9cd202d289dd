"""The moto server starter lives in app.dev.servers.moto (the demo uses it too); tests import it here."""
from app.dev.servers.moto import *  # noqa: F401,F403
from app.dev.servers.moto import (  # noqa: F401
    MotoServer,
    have_moto,
    scrub_aws_env,
    session,
    start_moto,
)
