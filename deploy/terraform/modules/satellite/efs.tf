# The satellite's own ("local") EFS: dualfs writes every change here first.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  local_name = "dualfs-${var.name}-local"
}

data "aws_iam_policy_document" "kms" {
  # The account administers the key through IAM, and EFS uses it through grants that it creates on
  # behalf of the principal that creates the file system. In a key policy, resource "*" is the
  # key itself.
  #checkov:skip=CKV_AWS_109:the key policy delegates the key to the account's IAM policies, as the AWS default key policy does
  #checkov:skip=CKV_AWS_111:the key policy delegates the key to the account's IAM policies, as the AWS default key policy does
  #checkov:skip=CKV_AWS_356:in a key policy, resource "*" means this key only
  statement {
    sid       = "AccountAdministration"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

resource "aws_kms_key" "efs" {
  description             = "Encryption at rest of the ${local.local_name} EFS file system"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = var.tags
}

resource "aws_kms_alias" "efs" {
  name          = "alias/${local.local_name}-efs"
  target_key_id = aws_kms_key.efs.key_id
}

resource "aws_efs_file_system" "local" {
  # Destroying the file system deletes every mirrored file, so Terraform refuses to plan it.
  lifecycle {
    prevent_destroy = true
  }

  creation_token                  = local.local_name
  encrypted                       = true
  kms_key_id                      = aws_kms_key.efs.arn
  performance_mode                = "generalPurpose"
  throughput_mode                 = "provisioned"
  provisioned_throughput_in_mibps = var.provisioned_throughput_mibps

  tags = merge(var.tags, { Name = local.local_name })
}

resource "aws_efs_backup_policy" "local" {
  file_system_id = aws_efs_file_system.local.id

  backup_policy {
    status = "ENABLED"
  }
}

resource "aws_security_group" "efs" {
  name        = "${local.local_name}-efs"
  description = "NFS from the EKS nodes to the ${local.local_name} mount targets"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${local.local_name}-efs" })
}

resource "aws_vpc_security_group_ingress_rule" "nfs" {
  for_each = toset(var.client_cidrs)

  security_group_id = aws_security_group.efs.id
  description       = "NFS over TLS from the EKS nodes"
  ip_protocol       = "tcp"
  from_port         = 2049
  to_port           = 2049
  cidr_ipv4         = each.value
  tags              = var.tags
}

resource "aws_efs_mount_target" "local" {
  for_each = var.mount_targets

  file_system_id  = aws_efs_file_system.local.id
  subnet_id       = each.value.subnet_id
  ip_address      = each.value.ip_address
  security_groups = [aws_security_group.efs.id]
}

# The dualfs tree on the local file system. It enforces the same identity as this satellite's
# access point on the central file system, so both trees hold files of one owner.
resource "aws_efs_access_point" "dualfs" {
  file_system_id = aws_efs_file_system.local.id

  posix_user {
    uid = var.posix_uid
    gid = var.posix_gid
  }

  root_directory {
    path = "/dualfs"

    creation_info {
      owner_uid   = var.posix_uid
      owner_gid   = var.posix_gid
      permissions = "0750"
    }
  }

  tags = merge(var.tags, { Name = "${local.local_name}-dualfs" })
}

data "aws_iam_policy_document" "local_file_system" {
  # Only the dualfs role may mount, only through the dualfs access point and a mount target.
  statement {
    sid       = "DualfsThroughAccessPoint"
    effect    = "Allow"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [aws_efs_file_system.local.arn]

    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.dualfs.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.dualfs.arn]
    }

    condition {
      test     = "Bool"
      variable = "elasticfilesystem:AccessedViaMountTarget"
      values   = ["true"]
    }
  }

  statement {
    sid       = "DenyWithoutTLS"
    effect    = "Deny"
    actions   = ["*"]
    resources = [aws_efs_file_system.local.arn]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_efs_file_system_policy" "local" {
  file_system_id                     = aws_efs_file_system.local.id
  policy                             = data.aws_iam_policy_document.local_file_system.json
  bypass_policy_lockout_safety_check = false
}
