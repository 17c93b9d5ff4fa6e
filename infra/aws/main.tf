# Attaches the Tourniquet agent's least-privilege policy (iam-policy.json:
# only the AWS actions the providers call, scoped to the resources of
# configs/aws-serverless.toml and configs/aws-edge-security.toml; edit the
# ARNs there to match your own config) to the role the agent runs as.
#
#   terraform apply -var role_name=tourniquet-agent
#
# The role itself (its trust policy for EC2, ECS tasks or EKS web identity)
# is yours; this only adds the permissions.

variable "role_name" {
  description = "The IAM role the agent runs as."
  type        = string
}

data "aws_caller_identity" "current" {}

resource "aws_iam_policy" "tourniquet_agent" {
  name        = "tourniquet-agent"
  description = "Tourniquet agent: the AWS calls of its providers, on its configured resources only"
  policy = templatefile("${path.module}/iam-policy.json", {
    account_id = data.aws_caller_identity.current.account_id
  })
}

resource "aws_iam_role_policy_attachment" "tourniquet_agent" {
  role       = var.role_name
  policy_arn = aws_iam_policy.tourniquet_agent.arn
}
