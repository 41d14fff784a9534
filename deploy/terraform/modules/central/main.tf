# The central EFS that every satellite mirrors into. Each satellite reaches it over VPC peering,
# mounts it with TLS and its IAM role, and sees only its own access point.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  # One security group rule and one route per satellite client CIDR.
  satellite_cidrs = merge([
    for name, satellite in var.satellites : {
      for cidr in satellite.client_cidrs : "${name}/${cidr}" => { satellite = name, cidr = cidr }
    }
  ]...)

  routes = merge([
    for table in var.route_table_ids : {
      for key, entry in local.satellite_cidrs : "${table}/${key}" => merge(entry, { route_table_id = table })
    }
  ]...)
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
  description             = "Encryption at rest of the ${var.name} EFS file system"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = var.tags
}

resource "aws_kms_alias" "efs" {
  name          = "alias/${var.name}-efs"
  target_key_id = aws_kms_key.efs.key_id
}

resource "aws_efs_file_system" "this" {
  # Destroying the file system deletes every mirrored file, so Terraform refuses to plan it.
  lifecycle {
    prevent_destroy = true
  }

  creation_token                  = var.name
  encrypted                       = true
  kms_key_id                      = aws_kms_key.efs.arn
  performance_mode                = "generalPurpose"
  throughput_mode                 = "provisioned"
  provisioned_throughput_in_mibps = var.provisioned_throughput_mibps

  tags = merge(var.tags, { Name = var.name })
}

resource "aws_efs_backup_policy" "this" {
  file_system_id = aws_efs_file_system.this.id

  backup_policy {
    status = "ENABLED"
  }
}

resource "aws_security_group" "efs" {
  name        = "${var.name}-efs"
  description = "NFS from the satellite EKS nodes to the ${var.name} mount targets"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-efs" })
}

resource "aws_vpc_security_group_ingress_rule" "nfs" {
  for_each = local.satellite_cidrs

  security_group_id = aws_security_group.efs.id
  description       = "NFS over TLS from ${each.value.satellite}"
  ip_protocol       = "tcp"
  from_port         = 2049
  to_port           = 2049
  cidr_ipv4         = each.value.cidr
  tags              = var.tags
}

resource "aws_efs_mount_target" "this" {
  for_each = var.mount_targets

  file_system_id  = aws_efs_file_system.this.id
  subnet_id       = each.value.subnet_id
  ip_address      = each.value.ip_address
  security_groups = [aws_security_group.efs.id]
}

resource "aws_efs_access_point" "satellite" {
  for_each = var.satellites

  file_system_id = aws_efs_file_system.this.id

  # Every NFS request through this access point runs as this identity, whatever uid the
  # client sends, so the satellite's files all belong to it.
  posix_user {
    uid = each.value.posix_uid
    gid = each.value.posix_gid
  }

  root_directory {
    path = "/${each.key}"

    creation_info {
      owner_uid   = each.value.posix_uid
      owner_gid   = each.value.posix_gid
      permissions = "0750"
    }
  }

  tags = merge(var.tags, { Name = "${var.name}-${each.key}" })
}

data "aws_iam_policy_document" "file_system" {
  # Each satellite role may mount and write, only through its own access point and a mount
  # target. With a file system policy in place, every other client, anonymous NFS included, is
  # refused.
  dynamic "statement" {
    for_each = var.satellites

    content {
      sid       = "${replace(title(replace(statement.key, "-", " ")), " ", "")}ThroughAccessPoint"
      effect    = "Allow"
      actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
      resources = [aws_efs_file_system.this.arn]

      principals {
        type        = "AWS"
        identifiers = [statement.value.role_arn]
      }

      condition {
        test     = "StringEquals"
        variable = "elasticfilesystem:AccessPointArn"
        values   = [aws_efs_access_point.satellite[statement.key].arn]
      }

      condition {
        test     = "Bool"
        variable = "elasticfilesystem:AccessedViaMountTarget"
        values   = ["true"]
      }
    }
  }

  statement {
    sid       = "DenyWithoutTLS"
    effect    = "Deny"
    actions   = ["*"]
    resources = [aws_efs_file_system.this.arn]

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

resource "aws_efs_file_system_policy" "this" {
  file_system_id                     = aws_efs_file_system.this.id
  policy                             = data.aws_iam_policy_document.file_system.json
  bypass_policy_lockout_safety_check = false
}

# The satellites accept these requests in their own accounts (module satellite).
resource "aws_vpc_peering_connection" "satellite" {
  for_each = var.satellites

  vpc_id        = var.vpc_id
  peer_vpc_id   = each.value.vpc_id
  peer_owner_id = each.value.account_id
  auto_accept   = false

  tags = merge(var.tags, { Name = "${var.name}-${each.key}" })
}

resource "aws_route" "satellite" {
  for_each = local.routes

  route_table_id            = each.value.route_table_id
  destination_cidr_block    = each.value.cidr
  vpc_peering_connection_id = aws_vpc_peering_connection.satellite[each.value.satellite].id
}
