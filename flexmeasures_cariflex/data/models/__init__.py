"""Classes FlexMeasures finds in the plugin (it registers every ``Scheduler`` subclass by name)."""
