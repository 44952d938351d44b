"""``PlanDefinition/$apply``: template + patient + encounter → unsaved CarePlan resources. Pure."""
