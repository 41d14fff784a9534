variable "name" {
  description = "Satellite name, such as satellite1: the central access point is /NAME, and the IAM role is dualfs-NAME unless role_name is set."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9-]+$", var.name))
    error_message = "The satellite name must be lower-case letters, digits and hyphens."
  }
}

variable "vpc_id" {
  description = "VPC of the satellite's EKS cluster."
  type        = string
}

variable "client_cidrs" {
  description = "Subnets of the EKS nodes (the private subnets). Only they reach the local mount targets on NFS."
  type        = list(string)

  validation {
    condition     = alltrue([for cidr in var.client_cidrs : can(cidrnetmask(cidr))])
    error_message = "client_cidrs must be IPv4 CIDR blocks such as 10.1.11.0/24."
  }
}

variable "private_route_table_ids" {
  description = "Route tables of the node subnets. Each gets routes to the central mount target subnets through the peering connection."
  type        = list(string)
}

variable "mount_targets" {
  description = "One mount target of the local file system per Availability Zone, keyed by a name such as the AZ. ip_address may be null."
  type = map(object({
    subnet_id  = string
    ip_address = optional(string)
  }))

  validation {
    condition     = length(var.mount_targets) >= 2
    error_message = "Give at least two mount targets in different Availability Zones."
  }
}

variable "provisioned_throughput_mibps" {
  description = "Provisioned throughput of the local file system in MiB/s."
  type        = number
  default     = 500
}

variable "posix_uid" {
  description = "uid that the local access point enforces. Use the same value as the central access point of this satellite."
  type        = number
  default     = 10001
}

variable "posix_gid" {
  description = "gid that the local access point enforces. Use the same value as the central access point of this satellite."
  type        = number
  default     = 10001
}

variable "oidc_provider_arn" {
  description = "ARN of the IAM OIDC provider of the EKS cluster."
  type        = string
}

variable "oidc_issuer" {
  description = "OIDC issuer of the EKS cluster without the https:// prefix, such as oidc.eks.ap-southeast-1.amazonaws.com/id/EXAMPLE."
  type        = string

  validation {
    condition     = !startswith(var.oidc_issuer, "https://")
    error_message = "Give the issuer without the https:// prefix."
  }
}

variable "service_accounts" {
  description = <<-EOT
    Service accounts, as NAMESPACE:NAME, that may assume the role. The efs-csi node plugin
    mounts the volumes and signs the "iam" mount option with its own service account, so it
    must be listed; the dualfs service account carries the same role for its pods.
  EOT
  type        = list(string)
  default     = ["kube-system:efs-csi-node-sa", "dualfs:dualfs"]
}

variable "role_name" {
  description = "Name of the IRSA role, or null for dualfs-NAME."
  type        = string
  default     = null
}

variable "central" {
  description = <<-EOT
    The central file system as the central module outputs it, plus the CIDRs of its mount target
    subnets (routed through the peering connection) and the peering connection of this satellite.
  EOT
  type = object({
    file_system_id        = string
    file_system_arn       = string
    access_point_id       = string
    access_point_arn      = string
    mount_target_ips      = list(string)
    mount_target_cidrs    = list(string)
    peering_connection_id = string
  })
}

variable "kms_deletion_window_days" {
  description = "Waiting period in days before the local file system's KMS key is deleted."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}
