"""The sandbox, the demo and the dev servers (slapd, moto) they and the tests start."""
