"""Local stand-ins for outside systems, for the demo and the tests: a throw-away OpenLDAP
``slapd`` and a moto server (AWS). Never used by the product itself."""
