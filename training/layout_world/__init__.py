"""The layout world: a toy laboratory for system 2 (prompt -> layout -> ControlNet-seg, semantic supervision), where
presence, counts, relations and layout faithfulness of generated pictures can be scored exactly."""
