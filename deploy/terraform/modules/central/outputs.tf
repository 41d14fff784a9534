output "file_system_id" {
  description = "Id of the central file system."
  value       = aws_efs_file_system.this.id
}

output "file_system_arn" {
  description = "ARN of the central file system."
  value       = aws_efs_file_system.this.arn
}

output "mount_target_ips" {
  description = "Addresses of the mount targets, for the satellites' private DNS records."
  value       = sort([for target in aws_efs_mount_target.this : target.ip_address])
}

output "access_points" {
  description = "Per satellite: the access point id and ARN, and the efs-csi volumeHandle of its PersistentVolume."
  value = {
    for name, access_point in aws_efs_access_point.satellite : name => {
      id            = access_point.id
      arn           = access_point.arn
      volume_handle = "${aws_efs_file_system.this.id}::${access_point.id}"
    }
  }
}

output "peering_connection_ids" {
  description = "Per satellite: the id of the VPC peering connection that its account accepts."
  value       = { for name, peering in aws_vpc_peering_connection.satellite : name => peering.id }
}

output "security_group_id" {
  description = "Security group of the mount targets."
  value       = aws_security_group.efs.id
}
