"""The moto server starter lives in app.devservers.moto (the demo uses it too); tests import it here."""
from app.devservers.moto import *  # noqa: F401,F403
from app.devservers.moto import MotoServer, have_moto, scrub_aws_env, session, start_moto  # noqa: F401
