"""Demo datasets generated from code (see ``hub.datasets.demo``)."""
