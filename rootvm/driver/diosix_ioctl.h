/* SPDX-License-Identifier: MIT */
/*
 * Userspace interface of /dev/diosix, the Root VM's door to
 * the Diosix SBI extension (EID 0x0A000005).
 *
 * One ioctl per extension function, numbered with the function ID itself
 * (DIOSIX_IOC_<NAME> has _IOC_NR == DIOSIX_FID_<NAME>), so the two lists can
 * never drift apart. Every argument structure starts with a struct
 * diosix_ioc_ret in which the driver returns the SBI call's a0 (error) and a1
 * (value). The ioctl itself returns 0 whenever the hypervisor was called,
 * whatever it answered, and -1 with errno only when the driver refused the
 * request before calling it (EFAULT, EINVAL, E2BIG, ENOMEM, EOPNOTSUPP): so
 * callers can always tell a hypervisor refusal from a driver one.
 *
 * Where the SBI call takes a guest-physical address (GPA), the structure
 * carries a user pointer instead: the driver copies the data into kernel
 * memory it owns and passes that memory's GPA. The ABI structures embedded
 * here (struct diosix_spawn_args ...) come from diosix_sbi.h; their *_gpa
 * fields and `size` are ignored on input and filled in by the driver.
 *
 * Layout: every structure is a multiple of 8 bytes with naturally aligned
 * fields, identical for any 64-bit caller.
 */
#ifndef DIOSIX_IOCTL_H
#define DIOSIX_IOCTL_H

#include <linux/ioctl.h>
#include <linux/types.h>
#include "diosix_sbi.h"

/* 0xD5: 'D'iosix, SBI implementation ID 5 (unused in ioctl-number.rst). */
#define DIOSIX_IOC_MAGIC 0xD5

/* The character device, created by the misc core (mode 0600). */
#define DIOSIX_DEVICE "/dev/diosix"

/*
 * Largest SPAWN or EXEC image (also the hypervisor's own EXEC limit,
 * limits::EXEC_MAX_IMAGE). The driver stages it page by page in this VM's
 * RAM (see DIOSIX_SPAWN_PAGE_LIST), so the bound is about memory, not
 * contiguity: half the Root VM's default 128 MiB.
 */
#define DIOSIX_SPAWN_MAX_IMAGE (64u << 20)
/* Largest device tree passed to SPAWN: DIOSIX_SPAWN_MAX_DTB, the hypervisor's own
 * limit, from diosix_sbi.h. */
/* Largest LIST_CHILDREN request: one page of CIDs. */
#define DIOSIX_LIST_MAX (4096u / 8u)
/*
 * A child's virtio devices: the hypervisor's limits (diosix_abi::devices, not
 * in diosix_sbi.h; tools/dsx checks them against the ABI crate). At most
 * DIOSIX_SPAWN_MAX_DEVICES device specs per SPAWN, each with at most
 * DIOSIX_SPAWN_MAX_CONFIG configuration bytes and DIOSIX_DEVICE_MAX_QUEUES
 * queues, so a DEVICE_STATE answer is at most DIOSIX_DEVICE_STATE_MAX bytes.
 */
#define DIOSIX_SPAWN_MAX_DEVICES 8u
#define DIOSIX_SPAWN_MAX_CONFIG 256u
#define DIOSIX_DEVICE_MAX_QUEUES 8u
#define DIOSIX_DEVICE_STATE_MAX \
	(DIOSIX_DEVICE_STATE_SIZE + DIOSIX_DEVICE_MAX_QUEUES * DIOSIX_QUEUE_STATE_SIZE)

/* What the hypervisor answered: a0 and a1 of the SBI call. */
struct diosix_ioc_ret {
	__s64 error;	/* DIOSIX_SBI_ERR_* */
	__u64 value;
};

/*
 * Functions whose arguments are all scalars: arg[0..4] are a0..a4 exactly as
 * in docs/sbi-extension.md. EXIT, YIELD, FORK, DROP_TRUST, START, STOP,
 * RESUME, REBOOT, DROP_CHILD_TRUST, DEVICE_RAISE.
 */
struct diosix_ioc_scalar {
	struct diosix_ioc_ret ret;
	__u64 arg[5];
};

/*
 * SPAWN and EXEC: args.image_size / args.dtb_size bytes at the user
 * pointers. The driver always passes the image as a page list
 * (DIOSIX_SPAWN_PAGE_LIST) of pages it staged in this VM's memory. EXEC
 * (args.cid 0, no device tree: dtb_size 0 and dtb 0, no devices:
 * device_count 0 and devices 0, else EINVAL) makes this VM the image and
 * restarts it: on success the ioctl never returns.
 *
 * SPAWN's virtio devices: args.device_count (<= DIOSIX_SPAWN_MAX_DEVICES,
 * else E2BIG) struct diosix_device_spec at the user pointer devices. In each,
 * config_gpa is a *user pointer* to its config_len (<= DIOSIX_SPAWN_MAX_CONFIG,
 * else E2BIG) configuration bytes (ignored when config_len is 0); the driver
 * copies the specs and each configuration, and passes the GPAs of its copies
 * (and sets each spec's size). With device_count 0, devices is ignored.
 */
struct diosix_ioc_spawn {
	struct diosix_ioc_ret ret;	/* value: the child's CID */
	struct diosix_spawn_args args;
	__u64 image;		/* user pointer, args.image_size bytes */
	__u64 dtb;		/* user pointer or 0, args.dtb_size bytes */
	__u64 devices;		/* user pointer or 0, args.device_count specs */
};

/* GET_INFO (cid ignored) and GET_CHILD_INFO. */
struct diosix_ioc_vm_info {
	struct diosix_ioc_ret ret;
	__u64 cid;
	struct diosix_vm_info info;	/* out */
};

/* SET_QUOTA: passed through, no pointers. */
struct diosix_ioc_quota {
	struct diosix_ioc_ret ret;
	struct diosix_quota_args args;
};

/* IPC_SEND: args.len (<= DIOSIX_IPC_MAX_MESSAGE) bytes at data. */
struct diosix_ioc_ipc_send {
	struct diosix_ioc_ret ret;
	struct diosix_ipc_send_args args;
	__u64 data;		/* user pointer */
};

/*
 * IPC_RECV: up to args.max_len (<= DIOSIX_IPC_MAX_MESSAGE) bytes to buf.
 * DIOSIX_IPC_RECV_WAIT is refused (EINVAL): wait with poll() instead.
 */
struct diosix_ioc_ipc_recv {
	struct diosix_ioc_ret ret;	/* value: 1 received, 0 none */
	struct diosix_ipc_recv_args args;	/* out: cid, out_len */
	__u64 buf;		/* user pointer */
};

/* POLL_EVENT. */
struct diosix_ioc_event {
	struct diosix_ioc_ret ret;	/* value: 1 returned, 0 none */
	struct diosix_event event;	/* out */
};

/* GET_HV_INFO. */
struct diosix_ioc_hv_info {
	struct diosix_ioc_ret ret;
	struct diosix_hv_info info;	/* out */
};

/* CONSOLE_READ / CONSOLE_WRITE: len <= DIOSIX_CONSOLE_MAX_TRANSFER. */
struct diosix_ioc_console {
	struct diosix_ioc_ret ret;	/* value: bytes read / accepted */
	__u64 cid;
	__u64 buf;		/* user pointer */
	__u64 len;
};

/*
 * CHILD_MEM_READ / CHILD_MEM_WRITE: len <= DIOSIX_CHILD_MEM_MAX bytes between the
 * user buffer and the child's RAM at child_gpa (through a kernel copy).
 */
struct diosix_ioc_child_mem {
	struct diosix_ioc_ret ret;	/* value: bytes copied */
	__u64 cid;
	__u64 child_gpa;
	__u64 buf;		/* user pointer */
	__u64 len;
};

/*
 * DEVICE_STATE: the state of child cid's virtio device number device, a
 * struct diosix_device_state followed by its queues' struct
 * diosix_queue_state, into the user buffer buf of len bytes (a len above
 * DIOSIX_DEVICE_STATE_MAX is treated as that: no answer is longer). Takes the
 * device's pending bits.
 *
 * It also makes the open file a doorbell: from a file's first DEVICE_STATE on,
 * poll() on that file reports POLLIN when this VM's event interrupt fired
 * (a child device's pending bits became non-empty, or the event queue did)
 * since the file's latest DEVICE_STATE began, whether or not anyone takes
 * the events (POLL_EVENT no longer matters to that file). Each DEVICE_STATE
 * records the interrupt count *before* calling the hypervisor, so a
 * notification that lands during or after the call is never missed. One file
 * per device: with several devices on one file, a wake-up for one device
 * that lands before another device's DEVICE_STATE would be recorded as seen.
 * Files that never call DEVICE_STATE keep poll() as described at POLL_EVENT.
 */
struct diosix_ioc_device_state {
	struct diosix_ioc_ret ret;	/* value: bytes written to buf */
	__u64 cid;
	__u64 device;
	__u64 buf;		/* user pointer */
	__u64 len;
};

/* LIST_CHILDREN: capacity <= DIOSIX_LIST_MAX CIDs (u64) to cids. */
struct diosix_ioc_list {
	struct diosix_ioc_ret ret;	/* value: number of live children */
	__u64 cids;		/* user pointer */
	__u64 capacity;
};

/*
 * MAP_CHILD_MEM, UNMAP_CHILD_MEM, MAP_HOST_MMIO and ROUTE_IRQ name memory or
 * interrupts of the Root VM itself, which Linux owns: the driver has no safe
 * way to hand them over yet and answers EOPNOTSUPP. EXIT with CID 1 in the
 * Root VM is refused with EINVAL: use poweroff, which shuts Linux down first.
 * In any other VM, EXIT with CID 1 ends it at once (no return).
 */
#define DIOSIX_IOC(fid, type) _IOWR(DIOSIX_IOC_MAGIC, fid, type)

#define DIOSIX_IOC_EXIT \
	DIOSIX_IOC(DIOSIX_FID_EXIT, struct diosix_ioc_scalar)
#define DIOSIX_IOC_YIELD \
	DIOSIX_IOC(DIOSIX_FID_YIELD, struct diosix_ioc_scalar)
#define DIOSIX_IOC_FORK \
	DIOSIX_IOC(DIOSIX_FID_FORK, struct diosix_ioc_scalar)
#define DIOSIX_IOC_DROP_TRUST \
	DIOSIX_IOC(DIOSIX_FID_DROP_TRUST, struct diosix_ioc_scalar)
#define DIOSIX_IOC_SPAWN \
	DIOSIX_IOC(DIOSIX_FID_SPAWN, struct diosix_ioc_spawn)
#define DIOSIX_IOC_GET_INFO \
	DIOSIX_IOC(DIOSIX_FID_GET_INFO, struct diosix_ioc_vm_info)
#define DIOSIX_IOC_SET_QUOTA \
	DIOSIX_IOC(DIOSIX_FID_SET_QUOTA, struct diosix_ioc_quota)
#define DIOSIX_IOC_IPC_SEND \
	DIOSIX_IOC(DIOSIX_FID_IPC_SEND, struct diosix_ioc_ipc_send)
#define DIOSIX_IOC_IPC_RECV \
	DIOSIX_IOC(DIOSIX_FID_IPC_RECV, struct diosix_ioc_ipc_recv)
#define DIOSIX_IOC_POLL_EVENT \
	DIOSIX_IOC(DIOSIX_FID_POLL_EVENT, struct diosix_ioc_event)
#define DIOSIX_IOC_GET_HV_INFO \
	DIOSIX_IOC(DIOSIX_FID_GET_HV_INFO, struct diosix_ioc_hv_info)
#define DIOSIX_IOC_MAP_CHILD_MEM \
	DIOSIX_IOC(DIOSIX_FID_MAP_CHILD_MEM, struct diosix_ioc_scalar)
#define DIOSIX_IOC_UNMAP_CHILD_MEM \
	DIOSIX_IOC(DIOSIX_FID_UNMAP_CHILD_MEM, struct diosix_ioc_scalar)
#define DIOSIX_IOC_START \
	DIOSIX_IOC(DIOSIX_FID_START, struct diosix_ioc_scalar)
#define DIOSIX_IOC_STOP \
	DIOSIX_IOC(DIOSIX_FID_STOP, struct diosix_ioc_scalar)
#define DIOSIX_IOC_RESUME \
	DIOSIX_IOC(DIOSIX_FID_RESUME, struct diosix_ioc_scalar)
#define DIOSIX_IOC_REBOOT \
	DIOSIX_IOC(DIOSIX_FID_REBOOT, struct diosix_ioc_scalar)
#define DIOSIX_IOC_CONSOLE_READ \
	DIOSIX_IOC(DIOSIX_FID_CONSOLE_READ, struct diosix_ioc_console)
#define DIOSIX_IOC_CONSOLE_WRITE \
	DIOSIX_IOC(DIOSIX_FID_CONSOLE_WRITE, struct diosix_ioc_console)
#define DIOSIX_IOC_DROP_CHILD_TRUST \
	DIOSIX_IOC(DIOSIX_FID_DROP_CHILD_TRUST, struct diosix_ioc_scalar)
#define DIOSIX_IOC_GET_CHILD_INFO \
	DIOSIX_IOC(DIOSIX_FID_GET_CHILD_INFO, struct diosix_ioc_vm_info)
#define DIOSIX_IOC_LIST_CHILDREN \
	DIOSIX_IOC(DIOSIX_FID_LIST_CHILDREN, struct diosix_ioc_list)
#define DIOSIX_IOC_MAP_HOST_MMIO \
	DIOSIX_IOC(DIOSIX_FID_MAP_HOST_MMIO, struct diosix_ioc_scalar)
#define DIOSIX_IOC_ROUTE_IRQ \
	DIOSIX_IOC(DIOSIX_FID_ROUTE_IRQ, struct diosix_ioc_scalar)
#define DIOSIX_IOC_EXEC \
	DIOSIX_IOC(DIOSIX_FID_EXEC, struct diosix_ioc_spawn)
#define DIOSIX_IOC_RELEASE_DEVICE \
	DIOSIX_IOC(DIOSIX_FID_RELEASE_DEVICE, struct diosix_ioc_scalar)
#define DIOSIX_IOC_CHILD_MEM_READ \
	DIOSIX_IOC(DIOSIX_FID_CHILD_MEM_READ, struct diosix_ioc_child_mem)
#define DIOSIX_IOC_CHILD_MEM_WRITE \
	DIOSIX_IOC(DIOSIX_FID_CHILD_MEM_WRITE, struct diosix_ioc_child_mem)
#define DIOSIX_IOC_DEVICE_STATE \
	DIOSIX_IOC(DIOSIX_FID_DEVICE_STATE, struct diosix_ioc_device_state)
#define DIOSIX_IOC_DEVICE_RAISE \
	DIOSIX_IOC(DIOSIX_FID_DEVICE_RAISE, struct diosix_ioc_scalar)

/* Sizes the Rust side (tools/dsx) relies on. */
DIOSIX_STATIC_ASSERT(sizeof(struct diosix_ioc_ret) == 16, "ret");
DIOSIX_STATIC_ASSERT(sizeof(struct diosix_ioc_scalar) == 56, "scalar");
DIOSIX_STATIC_ASSERT(sizeof(struct diosix_ioc_child_mem) == 48, "child_mem");
DIOSIX_STATIC_ASSERT(sizeof(struct diosix_ioc_spawn) == 144, "spawn");
DIOSIX_STATIC_ASSERT(sizeof(struct diosix_ioc_device_state) == 48, "device_state");
DIOSIX_STATIC_ASSERT(DIOSIX_DEVICE_STATE_MAX == 304, "device_state max");
DIOSIX_STATIC_ASSERT(sizeof(struct diosix_ioc_vm_info) == 168, "vm_info");
DIOSIX_STATIC_ASSERT(sizeof(struct diosix_ioc_quota) == 56, "quota");
DIOSIX_STATIC_ASSERT(sizeof(struct diosix_ioc_ipc_send) == 56, "ipc_send");
DIOSIX_STATIC_ASSERT(sizeof(struct diosix_ioc_ipc_recv) == 64, "ipc_recv");
DIOSIX_STATIC_ASSERT(sizeof(struct diosix_ioc_event) == 48, "event");
DIOSIX_STATIC_ASSERT(sizeof(struct diosix_ioc_hv_info) == 72, "hv_info");
DIOSIX_STATIC_ASSERT(sizeof(struct diosix_ioc_console) == 40, "console");
DIOSIX_STATIC_ASSERT(sizeof(struct diosix_ioc_list) == 32, "list");

#endif /* DIOSIX_IOCTL_H */
