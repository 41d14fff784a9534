variable "name" {
  description = "Name of the central file system, used in resource names and tags."
  type        = string
  default     = "dualfs-core"
}

variable "vpc_id" {
  description = "VPC of the central account that holds the EFS mount targets."
  type        = string
}

variable "mount_targets" {
  description = <<-EOT
    One EFS mount target per Availability Zone, keyed by a name such as the AZ. ip_address fixes
    the mount target's address inside its subnet, so the satellites' DNS records can be written
    before the mount target exists; null lets EFS choose one.
  EOT
  type = map(object({
    subnet_id  = string
    ip_address = optional(string)
  }))

  validation {
    condition     = length(var.mount_targets) >= 3
    error_message = "Give at least three mount targets, one per Availability Zone, so the file system stays reachable when one zone fails."
  }
}

variable "route_table_ids" {
  description = "Route tables of the mount target subnets. Each gets a route to every satellite's client CIDRs through its peering connection."
  type        = list(string)
}

variable "provisioned_throughput_mibps" {
  description = "Provisioned throughput of the file system in MiB/s."
  type        = number
  default     = 1000
}

variable "satellites" {
  description = <<-EOT
    Satellite accounts that mirror into this file system, keyed by satellite name. Each gets an
    access point rooted at /NAME that enforces posix_uid and posix_gid, a VPC peering connection
    that its account accepts, and NFS access from client_cidrs (the subnets of its EKS nodes).
    role_arn is the satellite's IRSA role; only that role may mount, and only through its
    access point.
  EOT
  type = map(object({
    account_id   = string
    vpc_id       = string
    vpc_cidr     = string
    client_cidrs = list(string)
    role_arn     = string
    posix_uid    = optional(number, 10001)
    posix_gid    = optional(number, 10001)
  }))

  validation {
    condition     = alltrue([for name, satellite in var.satellites : can(regex("^[a-z0-9-]+$", name)) && can(regex("^[0-9]{12}$", satellite.account_id))])
    error_message = "Satellite names must be lower-case letters, digits and hyphens, and account_id must be 12 digits."
  }

  validation {
    condition     = alltrue(flatten([for satellite in var.satellites : [for cidr in concat([satellite.vpc_cidr], satellite.client_cidrs) : can(cidrnetmask(cidr))]]))
    error_message = "vpc_cidr and client_cidrs must be IPv4 CIDR blocks such as 10.1.11.0/24."
  }
}

variable "kms_deletion_window_days" {
  description = "Waiting period in days before the file system's KMS key is deleted."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}
