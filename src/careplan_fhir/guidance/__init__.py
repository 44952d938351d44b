"""Recovery guidance: parsers per source format → RecoveryGuidance → PlanDefinition. Pure."""
