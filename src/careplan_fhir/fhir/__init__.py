"""FHIR R4 building blocks: the only place that imports ``fhir.resources.R4B``."""
