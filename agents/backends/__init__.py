"""Model backends behind two narrow protocols (chat; grounding/segmentation) and one factory per kind."""
