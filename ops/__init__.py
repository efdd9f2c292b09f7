"""Operating Steplens: health and readiness probes, the metrics scrape, and the state behind the system page.

It sits above the apps whose state it reads (runner < ops < console) and below the console that shows it.
"""
