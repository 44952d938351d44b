"""careplan-fhir: a FHIR R4 care-plan module for EHRs."""

__version__ = "0.1.0"
