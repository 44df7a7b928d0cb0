"""Label-free evaluation: metrics, the evaluation loop over volumes, visualisation."""
