"""One screen per module: queue, detail, grants, bypass, reviews, audit, health, help."""
