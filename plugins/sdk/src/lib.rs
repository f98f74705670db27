// filled in by the plugin SDK work
