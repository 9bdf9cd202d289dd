"""ServiceNow integration: a Table API simulator (``simulator``), its encoded-query engine (``query``) and demo data (``seed``)."""
