"""The FHIR R4 REST facade (https://hl7.org/fhir/R4/http.html), one module per interaction."""
