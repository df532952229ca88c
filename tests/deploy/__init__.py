"""The deployment: deploy/kubernetes/ manifests and the operator's Deployment, against
Kubernetes' own schemas."""
