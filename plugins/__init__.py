"""Built-in provider plugins, registered through the same entry points a third party would use."""
