// SPDX-License-Identifier: MIT
/*
 * diosix.ko: /dev/diosix, the Root VM's interface to the Diosix SBI
 * extension (EID 0x0A000005). See diosix_ioctl.h for the interface and
 * docs/sbi-extension.md for what each function does.
 *
 * Rules every path follows:
 *  - userspace never hands the hypervisor a pointer: data is copied into
 *    kernel memory the driver allocated, and the GPA of that memory is what
 *    the SBI call sees (this VM's physical addresses are its GPAs);
 *  - every length is bounded before anything is allocated, and structure
 *    sizes are set by the driver, never taken from userspace;
 *  - results are copied back only after the call returned, and buffers are
 *    freed before the ioctl returns, so nothing outlives one request.
 */

#include <linux/capability.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/miscdevice.h>
#include <linux/mod_devicetable.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/platform_device.h>
#include <linux/poll.h>
#include <linux/wait.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <asm/page.h>
#include <asm/sbi.h>

#include "diosix_ioctl.h"

/*
 * Events: where the VM's device tree has a "diosix,hypervisor" node, its
 * interrupt fires each time the VM's event queue stops being empty, and each
 * time a child device's pending bits do (the hypervisor raises it once per
 * filling, not once per event). poll() on /dev/diosix reports POLLIN from
 * that interrupt until a POLL_EVENT finds the queue empty. Without the node
 * poll() never reports anything, and callers fall back to polling with
 * POLL_EVENT after their timeout.
 *
 * Doorbells: a file that has made a DEVICE_STATE call (a device backend)
 * reports POLLIN instead while the interrupt count differs from the count
 * its latest DEVICE_STATE recorded before calling the hypervisor, so nobody
 * has to consume events for a backend to be woken, and a wake-up that lands
 * during the call is not lost (see diosix_ioctl.h).
 */
static DECLARE_WAIT_QUEUE_HEAD(diosix_event_wq);
static atomic_t diosix_events_ready = ATOMIC_INIT(0);
/* Event interrupts taken since the module was loaded (wraps). */
static atomic_t diosix_irq_seq = ATOMIC_INIT(0);

/* Per open file. */
struct diosix_file {
	/* Set by the file's first DEVICE_STATE, never cleared. */
	bool doorbell;
	/* diosix_irq_seq when the file's latest DEVICE_STATE began. */
	atomic_t seen;
	/*
	 * CHILD_MEM transfers of this file: DIOSIX_CHILD_MEM_MAX bytes, made
	 * on its first transfer and kept (a device backend makes thousands a
	 * second; a kmalloc of 64 KiB each time is the page allocator's work
	 * each time). Used under @xfer_lock, freed with the file.
	 */
	struct mutex xfer_lock;
	void *xfer;
};

/* One SBI call into the extension; arguments the function does not use are 0. */
static void diosix_call(unsigned long fid, const u64 *a, struct diosix_ioc_ret *ret)
{
	struct sbiret r = sbi_ecall(DIOSIX_SBI_EID, fid, a[0], a[1], a[2], a[3],
				    a[4], 0);

	ret->error = r.error;
	ret->value = r.value;
}

/*
 * Copies @len user bytes at @uptr into a new kmalloc buffer (physically
 * contiguous, so one GPA range). @len must already be bounded.
 */
static void *diosix_copy_in(u64 uptr, u64 len)
{
	/* A real buffer even for 0 bytes, so its GPA is valid RAM. */
	if (!len)
		return kzalloc(8, GFP_KERNEL) ?: ERR_PTR(-ENOMEM);
	return memdup_user(u64_to_user_ptr(uptr), len);
}

/*
 * The kernel buffer of a transfer of @len (already bounded) bytes: a copy of the
 * user's @uptr when the data goes to the hypervisor (@in), else zeroed room for
 * what comes back.
 */
static void *diosix_bounce(bool in, u64 uptr, u64 len)
{
	if (in)
		return diosix_copy_in(uptr, len);
	return kzalloc(len ? len : 8, GFP_KERNEL) ?: ERR_PTR(-ENOMEM);
}

/*
 * Ends a transfer through @buf: on success, when data came back (@out), the first
 * @n bytes go to the user's @uptr; then the SBI result goes to @uarg, and @buf is
 * freed either way.
 */
static long diosix_bounce_done(void *buf, bool out, u64 uptr, u64 n,
			       const struct diosix_ioc_ret *ret, void __user *uarg)
{
	long err = 0;

	if (out && ret->error == DIOSIX_SBI_ERR_SUCCESS &&
	    copy_to_user(u64_to_user_ptr(uptr), buf, n))
		err = -EFAULT;
	else if (copy_to_user(uarg, ret, sizeof(*ret)))
		err = -EFAULT;
	kfree(buf);
	return err;
}

/*
 * Whether this VM is the Root VM, asked now (a FORK clone of the Root VM runs
 * this same driver, so nothing about it can be cached). Unknown counts as
 * the Root VM.
 */
static bool diosix_is_root_vm(void)
{
	struct diosix_vm_info *info = kzalloc(sizeof(*info), GFP_KERNEL);
	struct diosix_ioc_ret ret;
	u64 a[5] = { 0 };
	bool root;

	if (!info)
		return true;
	a[0] = virt_to_phys(info);
	a[1] = sizeof(*info);
	diosix_call(DIOSIX_FID_GET_INFO, a, &ret);
	root = ret.error != DIOSIX_SBI_ERR_SUCCESS ||
	       (info->flags & DIOSIX_INFO_ROOT);
	kfree(info);
	return root;
}

static long diosix_scalar(unsigned int fid, void __user *uarg)
{
	struct diosix_ioc_scalar s;

	if (copy_from_user(&s, uarg, sizeof(s)))
		return -EFAULT;

	switch (fid) {
	case DIOSIX_FID_EXIT:
		/*
		 * Ending the Root VM under a running Linux loses its state and
		 * restarts the host: use poweroff. Any other VM may end itself
		 * at once (`dsx load`'s clone does when its EXEC fails: a
		 * clone holds no devices, so it has nothing to shut down).
		 */
		if (s.arg[0] == DIOSIX_CID_SELF && diosix_is_root_vm())
			return -EINVAL;
		break;
	case DIOSIX_FID_MAP_CHILD_MEM:
	case DIOSIX_FID_UNMAP_CHILD_MEM:
	case DIOSIX_FID_MAP_HOST_MMIO:
	case DIOSIX_FID_ROUTE_IRQ:
	case DIOSIX_FID_RELEASE_DEVICE:
		/*
		 * These give away pages, MMIO windows or interrupts of this VM
		 * that Linux owns and would keep using: refused until the
		 * driver can allocate and pin what it hands over.
		 */
		return -EOPNOTSUPP;
	}

	diosix_call(fid, s.arg, &s.ret);
	if (copy_to_user(uarg, &s, sizeof(s)))
		return -EFAULT;
	return 0;
}

/* Frees the staging pages of an image; @list entries are 0 past the last. */
static void diosix_free_page_list(u64 *list, size_t npages)
{
	size_t i;

	for (i = 0; i < npages && list[i]; i++)
		free_page((unsigned long)phys_to_virt(list[i]));
	kfree(list);
}

/*
 * Copies @size user bytes at @uptr into single pages of this VM and returns
 * the list of their GPAs, one u64 per 4 KiB (DIOSIX_SPAWN_PAGE_LIST): Linux
 * cannot promise MiBs of physically contiguous memory, one page at a time it
 * can. The tail of the last page is zeroed. On error returns an ERR_PTR and
 * has freed everything. @size must be non-zero and already bounded.
 */
static u64 *diosix_stage_pages(u64 uptr, u64 size, size_t *npages)
{
	size_t n = DIV_ROUND_UP(size, PAGE_SIZE), i;
	u64 *list;
	long err;

	BUILD_BUG_ON(PAGE_SIZE != 4096);	/* the ABI's page size */
	/* One contiguous array: the hypervisor reads it at one GPA. */
	list = kcalloc(n, sizeof(*list), GFP_KERNEL);
	if (!list)
		return ERR_PTR(-ENOMEM);
	for (i = 0; i < n; i++) {
		u64 off = (u64)i * PAGE_SIZE;
		size_t len = min_t(u64, PAGE_SIZE, size - off);
		/* Fail with ENOMEM rather than wake the OOM killer for a guest. */
		void *page = (void *)__get_free_page(GFP_KERNEL | __GFP_NOWARN |
						    __GFP_RETRY_MAYFAIL);

		if (!page) {
			err = -ENOMEM;
			goto fail;
		}
		list[i] = virt_to_phys(page);
		if (copy_from_user(page, u64_to_user_ptr(uptr + off), len)) {
			err = -EFAULT;
			goto fail;
		}
		memset(page + len, 0, PAGE_SIZE - len);
		if (fatal_signal_pending(current)) {
			err = -EINTR;
			goto fail;
		}
		cond_resched();
	}
	*npages = n;
	return list;
fail:
	diosix_free_page_list(list, n);
	return ERR_PTR(err);
}

/* Frees SPAWN's copied device specs and their @count configurations. */
static void diosix_free_devices(struct diosix_device_spec *specs,
				void **configs, u32 count)
{
	u32 i;

	for (i = 0; i < count; i++)
		kfree(configs[i]);
	kfree(specs);
}

/*
 * SPAWN's devices: the @count (1..DIOSIX_SPAWN_MAX_DEVICES) specs at user
 * @uptr copied into one kernel array, and each one's configuration (its
 * config_gpa a user pointer on input) into a buffer of its own, whose GPA
 * replaces the pointer; @configs (DIOSIX_SPAWN_MAX_DEVICES entries, NULL on
 * entry) gets those buffers for diosix_free_devices. On error returns an
 * ERR_PTR and has freed everything.
 */
static struct diosix_device_spec *diosix_copy_devices(u64 uptr, u32 count,
						      void **configs)
{
	struct diosix_device_spec *specs;
	long err;
	u32 i;

	specs = memdup_user(u64_to_user_ptr(uptr), count * sizeof(*specs));
	if (IS_ERR(specs))
		return specs;
	for (i = 0; i < count; i++) {
		struct diosix_device_spec *d = &specs[i];

		d->size = sizeof(*d);
		if (!d->config_len) {
			d->config_gpa = 0;
			continue;
		}
		if (d->config_len > DIOSIX_SPAWN_MAX_CONFIG) {
			err = -E2BIG;
			goto fail;
		}
		configs[i] = memdup_user(u64_to_user_ptr(d->config_gpa),
					 d->config_len);
		if (IS_ERR(configs[i])) {
			err = PTR_ERR(configs[i]);
			configs[i] = NULL;
			goto fail;
		}
		d->config_gpa = virt_to_phys(configs[i]);
	}
	return specs;
fail:
	diosix_free_devices(specs, configs, count);
	return ERR_PTR(err);
}

/*
 * SPAWN and EXEC: the image (and SPAWN's device tree and device list)
 * staged in this VM's memory, the image's pages passed as a list.
 *
 * SPAWN copies the image into the child during the call, so the pages are
 * freed as soon as it returns. EXEC turns this VM into the image: on
 * success the call does not return (the pages become the new image, and
 * this Linux is gone); on a refusal nothing changed and they are freed.
 * EXEC takes no device tree (the hypervisor makes one) and no devices:
 * EINVAL.
 */
static long diosix_image_call(unsigned int fid, void __user *uarg)
{
	struct diosix_ioc_spawn s;
	struct diosix_spawn_args *args = NULL;
	struct diosix_device_spec *specs = NULL;
	void *configs[DIOSIX_SPAWN_MAX_DEVICES] = { NULL };
	void *dtb = NULL;
	u64 *list;
	size_t npages = 0;
	u64 a[5] = { 0 };
	long err = 0;

	if (copy_from_user(&s, uarg, sizeof(s)))
		return -EFAULT;
	if (!s.args.image_size)
		return -EINVAL;
	if (fid == DIOSIX_FID_EXEC &&
	    (s.args.dtb_size || s.dtb || s.args.device_count || s.devices))
		return -EINVAL;
	if (s.args.image_size > DIOSIX_SPAWN_MAX_IMAGE ||
	    s.args.dtb_size > DIOSIX_SPAWN_MAX_DTB ||
	    s.args.device_count > DIOSIX_SPAWN_MAX_DEVICES)
		return -E2BIG;

	/* The small copies first: a bad device list fails before the image. */
	if (s.args.device_count) {
		specs = diosix_copy_devices(s.devices, s.args.device_count,
					    configs);
		if (IS_ERR(specs))
			return PTR_ERR(specs);
	}
	list = diosix_stage_pages(s.image, s.args.image_size, &npages);
	if (IS_ERR(list)) {
		err = PTR_ERR(list);
		list = NULL;
		goto out;
	}
	if (s.args.dtb_size) {
		dtb = diosix_copy_in(s.dtb, s.args.dtb_size);
		if (IS_ERR(dtb)) {
			err = PTR_ERR(dtb);
			dtb = NULL;
			goto out;
		}
	}

	args = kmalloc(sizeof(*args), GFP_KERNEL);
	if (!args) {
		err = -ENOMEM;
		goto out;
	}
	*args = s.args;
	args->size = sizeof(*args);
	args->flags |= DIOSIX_SPAWN_PAGE_LIST;
	args->image_gpa = virt_to_phys(list);
	args->dtb_gpa = dtb ? virt_to_phys(dtb) : 0;
	args->devices_gpa = specs ? virt_to_phys(specs) : 0;
	a[0] = virt_to_phys(args);
	diosix_call(fid, a, &s.ret);

	if (copy_to_user(uarg, &s.ret, sizeof(s.ret)))
		err = -EFAULT;
out:
	kfree(args);
	kfree(dtb);
	if (list)
		diosix_free_page_list(list, npages);
	if (specs)
		diosix_free_devices(specs, configs, s.args.device_count);
	return err;
}

static long diosix_vm_info(unsigned int fid, void __user *uarg)
{
	struct diosix_ioc_vm_info s;
	struct diosix_vm_info *info;
	u64 a[5] = { 0 };

	if (copy_from_user(&s, uarg, sizeof(s)))
		return -EFAULT;
	info = kzalloc(sizeof(*info), GFP_KERNEL);
	if (!info)
		return -ENOMEM;

	if (fid == DIOSIX_FID_GET_INFO) {
		a[0] = virt_to_phys(info);
		a[1] = sizeof(*info);
	} else {
		a[0] = s.cid;
		a[1] = virt_to_phys(info);
		a[2] = sizeof(*info);
	}
	diosix_call(fid, a, &s.ret);
	s.info = *info;
	kfree(info);

	if (copy_to_user(uarg, &s, sizeof(s)))
		return -EFAULT;
	return 0;
}

static long diosix_quota(void __user *uarg)
{
	struct diosix_ioc_quota s;
	struct diosix_quota_args *args;
	u64 a[5] = { 0 };

	if (copy_from_user(&s, uarg, sizeof(s)))
		return -EFAULT;
	args = kmalloc(sizeof(*args), GFP_KERNEL);
	if (!args)
		return -ENOMEM;
	*args = s.args;
	args->size = sizeof(*args);
	a[0] = virt_to_phys(args);
	diosix_call(DIOSIX_FID_SET_QUOTA, a, &s.ret);
	kfree(args);

	if (copy_to_user(uarg, &s.ret, sizeof(s.ret)))
		return -EFAULT;
	return 0;
}

static long diosix_ipc_send(void __user *uarg)
{
	struct diosix_ioc_ipc_send s;
	struct diosix_ipc_send_args *args;
	u64 a[5] = { 0 };
	void *data;
	long err = 0;

	if (copy_from_user(&s, uarg, sizeof(s)))
		return -EFAULT;
	if (s.args.len > DIOSIX_IPC_MAX_MESSAGE)
		return -E2BIG;
	data = diosix_copy_in(s.data, s.args.len);
	if (IS_ERR(data))
		return PTR_ERR(data);
	args = kmalloc(sizeof(*args), GFP_KERNEL);
	if (!args) {
		err = -ENOMEM;
		goto out;
	}
	*args = s.args;
	args->size = sizeof(*args);
	args->data_gpa = virt_to_phys(data);
	a[0] = virt_to_phys(args);
	diosix_call(DIOSIX_FID_IPC_SEND, a, &s.ret);
	kfree(args);

	if (copy_to_user(uarg, &s.ret, sizeof(s.ret)))
		err = -EFAULT;
out:
	kfree(data);
	return err;
}

static long diosix_ipc_recv(void __user *uarg)
{
	struct diosix_ioc_ipc_recv s;
	struct diosix_ipc_recv_args *args;
	u64 a[5] = { 0 };
	void *buf;
	long err = 0;

	if (copy_from_user(&s, uarg, sizeof(s)))
		return -EFAULT;
	if (s.args.max_len > DIOSIX_IPC_MAX_MESSAGE)
		return -E2BIG;
	/*
	 * A Linux CPU does not sleep inside the hypervisor (it would stall until
	 * its next interrupt with a task in the middle of a system call): a
	 * process waits for messages with poll() on the event interrupt.
	 */
	if (s.args.flags & DIOSIX_IPC_RECV_WAIT)
		return -EINVAL;
	/* Zeroed: the hypervisor may write fewer bytes than max_len. */
	buf = kzalloc(s.args.max_len ? s.args.max_len : 8, GFP_KERNEL);
	args = kmalloc(sizeof(*args), GFP_KERNEL);
	if (!buf || !args) {
		err = -ENOMEM;
		goto out;
	}
	*args = s.args;
	args->size = sizeof(*args);
	args->buf_gpa = virt_to_phys(buf);
	args->out_len = 0;
	a[0] = virt_to_phys(args);
	diosix_call(DIOSIX_FID_IPC_RECV, a, &s.ret);

	s.args.cid = args->cid;
	/* Never trust out_len beyond the buffer, whatever was written. */
	s.args.out_len = min_t(u64, args->out_len, s.args.max_len);
	if (s.ret.error == DIOSIX_SBI_ERR_SUCCESS && s.ret.value == 1 &&
	    copy_to_user(u64_to_user_ptr(s.buf), buf, s.args.out_len)) {
		err = -EFAULT;
		goto out;
	}
	if (copy_to_user(uarg, &s, sizeof(s)))
		err = -EFAULT;
out:
	kfree(args);
	kfree(buf);
	return err;
}

static long diosix_poll_event(void __user *uarg)
{
	struct diosix_ioc_event s = { 0 };
	struct diosix_event *ev;
	u64 a[5] = { 0 };

	ev = kzalloc(sizeof(*ev), GFP_KERNEL);
	if (!ev)
		return -ENOMEM;
	a[0] = virt_to_phys(ev);
	a[1] = sizeof(*ev);
	/*
	 * Cleared before the call: an event queued after it finds the queue
	 * empty raises the interrupt again, which sets it back.
	 */
	atomic_set(&diosix_events_ready, 0);
	diosix_call(DIOSIX_FID_POLL_EVENT, a, &s.ret);
	if (s.ret.error != DIOSIX_SBI_ERR_SUCCESS || s.ret.value == 1)
		atomic_set(&diosix_events_ready, 1);
	s.event = *ev;
	kfree(ev);

	if (copy_to_user(uarg, &s, sizeof(s)))
		return -EFAULT;
	return 0;
}

static long diosix_hv_info(void __user *uarg)
{
	struct diosix_ioc_hv_info s = { 0 };
	struct diosix_hv_info *info;
	u64 a[5] = { 0 };

	info = kzalloc(sizeof(*info), GFP_KERNEL);
	if (!info)
		return -ENOMEM;
	a[0] = virt_to_phys(info);
	a[1] = sizeof(*info);
	diosix_call(DIOSIX_FID_GET_HV_INFO, a, &s.ret);
	s.info = *info;
	kfree(info);

	if (copy_to_user(uarg, &s, sizeof(s)))
		return -EFAULT;
	return 0;
}

static long diosix_console(unsigned int fid, void __user *uarg)
{
	struct diosix_ioc_console s;
	u64 a[5] = { 0 };
	void *buf;

	if (copy_from_user(&s, uarg, sizeof(s)))
		return -EFAULT;
	if (s.len > DIOSIX_CONSOLE_MAX_TRANSFER)
		return -E2BIG;
	buf = diosix_bounce(fid == DIOSIX_FID_CONSOLE_WRITE, s.buf, s.len);
	if (IS_ERR(buf))
		return PTR_ERR(buf);

	a[0] = s.cid;
	a[1] = virt_to_phys(buf);
	a[2] = s.len;
	diosix_call(fid, a, &s.ret);
	/* A count beyond the request would be a hypervisor bug. */
	if (s.ret.error == DIOSIX_SBI_ERR_SUCCESS)
		s.ret.value = min_t(u64, s.ret.value, s.len);
	return diosix_bounce_done(buf, fid == DIOSIX_FID_CONSOLE_READ, s.buf,
				  s.ret.value, &s.ret, uarg);
}

static long diosix_list(void __user *uarg)
{
	struct diosix_ioc_list s;
	u64 a[5] = { 0 };
	u64 *cids;
	long err = 0;

	if (copy_from_user(&s, uarg, sizeof(s)))
		return -EFAULT;
	if (s.capacity > DIOSIX_LIST_MAX)
		return -E2BIG;
	cids = kcalloc(s.capacity ? s.capacity : 1, sizeof(u64), GFP_KERNEL);
	if (!cids)
		return -ENOMEM;

	a[0] = virt_to_phys(cids);
	a[1] = s.capacity;
	diosix_call(DIOSIX_FID_LIST_CHILDREN, a, &s.ret);

	if (s.ret.error == DIOSIX_SBI_ERR_SUCCESS &&
	    copy_to_user(u64_to_user_ptr(s.cids), cids,
			 min_t(u64, s.ret.value, s.capacity) * sizeof(u64))) {
		err = -EFAULT;
		goto out;
	}
	if (copy_to_user(uarg, &s.ret, sizeof(s.ret)))
		err = -EFAULT;
out:
	kfree(cids);
	return err;
}

static long diosix_child_mem(struct file *file, unsigned int fid,
			     void __user *uarg)
{
	struct diosix_file *df = file->private_data;
	bool to_child = fid == DIOSIX_FID_CHILD_MEM_WRITE;
	struct diosix_ioc_child_mem s;
	u64 a[5] = { 0 };
	long err = 0;

	if (copy_from_user(&s, uarg, sizeof(s)))
		return -EFAULT;
	if (s.len > DIOSIX_CHILD_MEM_MAX)
		return -E2BIG;
	if (mutex_lock_interruptible(&df->xfer_lock))
		return -EINTR;
	if (!df->xfer) {
		df->xfer = kmalloc(DIOSIX_CHILD_MEM_MAX, GFP_KERNEL);
		if (!df->xfer) {
			err = -ENOMEM;
			goto out;
		}
	}
	if (to_child && copy_from_user(df->xfer, u64_to_user_ptr(s.buf), s.len)) {
		err = -EFAULT;
		goto out;
	}

	a[0] = s.cid;
	a[1] = s.child_gpa;
	a[2] = virt_to_phys(df->xfer);
	a[3] = s.len;
	diosix_call(fid, a, &s.ret);
	if (!to_child && s.ret.error == DIOSIX_SBI_ERR_SUCCESS &&
	    copy_to_user(u64_to_user_ptr(s.buf), df->xfer, s.len))
		err = -EFAULT;
	else if (copy_to_user(uarg, &s.ret, sizeof(s.ret)))
		err = -EFAULT;
out:
	mutex_unlock(&df->xfer_lock);
	return err;
}

static long diosix_device_state(struct file *file, void __user *uarg)
{
	struct diosix_file *df = file->private_data;
	struct diosix_ioc_device_state s;
	u64 a[5] = { 0 };
	u64 len;
	void *buf;

	if (copy_from_user(&s, uarg, sizeof(s)))
		return -EFAULT;
	/* A larger buffer is fine: no answer is longer than this. */
	len = min_t(u64, s.len, DIOSIX_DEVICE_STATE_MAX);
	buf = diosix_bounce(false, 0, len);
	if (IS_ERR(buf))
		return PTR_ERR(buf);

	/*
	 * The doorbell: the interrupt count is recorded before the call takes
	 * the pending bits, so an interrupt for bits set after that (or while
	 * the call runs) leaves the count ahead of it and poll() reports it.
	 */
	atomic_set(&df->seen, atomic_read(&diosix_irq_seq));
	WRITE_ONCE(df->doorbell, true);
	/* The count is read before the call can take the pending bits. */
	smp_mb();

	a[0] = s.cid;
	a[1] = s.device;
	a[2] = virt_to_phys(buf);
	a[3] = len;
	diosix_call(DIOSIX_FID_DEVICE_STATE, a, &s.ret);
	/* A count beyond the buffer would be a hypervisor bug. */
	if (s.ret.error == DIOSIX_SBI_ERR_SUCCESS)
		s.ret.value = min_t(u64, s.ret.value, len);
	return diosix_bounce_done(buf, true, s.buf, s.ret.value, &s.ret, uarg);
}

static long diosix_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	void __user *uarg = (void __user *)arg;
	unsigned int fid = _IOC_NR(cmd);

	/* The full command (type, direction, size) must be one we define. */
	switch (cmd) {
	case DIOSIX_IOC_EXIT:
	case DIOSIX_IOC_YIELD:
	case DIOSIX_IOC_FORK:
	case DIOSIX_IOC_DROP_TRUST:
	case DIOSIX_IOC_MAP_CHILD_MEM:
	case DIOSIX_IOC_UNMAP_CHILD_MEM:
	case DIOSIX_IOC_START:
	case DIOSIX_IOC_STOP:
	case DIOSIX_IOC_RESUME:
	case DIOSIX_IOC_REBOOT:
	case DIOSIX_IOC_DROP_CHILD_TRUST:
	case DIOSIX_IOC_MAP_HOST_MMIO:
	case DIOSIX_IOC_ROUTE_IRQ:
	case DIOSIX_IOC_RELEASE_DEVICE:
	case DIOSIX_IOC_DEVICE_RAISE:
		return diosix_scalar(fid, uarg);
	case DIOSIX_IOC_SPAWN:
	case DIOSIX_IOC_EXEC:
		return diosix_image_call(fid, uarg);
	case DIOSIX_IOC_GET_INFO:
	case DIOSIX_IOC_GET_CHILD_INFO:
		return diosix_vm_info(fid, uarg);
	case DIOSIX_IOC_SET_QUOTA:
		return diosix_quota(uarg);
	case DIOSIX_IOC_IPC_SEND:
		return diosix_ipc_send(uarg);
	case DIOSIX_IOC_IPC_RECV:
		return diosix_ipc_recv(uarg);
	case DIOSIX_IOC_POLL_EVENT:
		return diosix_poll_event(uarg);
	case DIOSIX_IOC_GET_HV_INFO:
		return diosix_hv_info(uarg);
	case DIOSIX_IOC_CONSOLE_READ:
	case DIOSIX_IOC_CONSOLE_WRITE:
		return diosix_console(fid, uarg);
	case DIOSIX_IOC_LIST_CHILDREN:
		return diosix_list(uarg);
	case DIOSIX_IOC_CHILD_MEM_READ:
	case DIOSIX_IOC_CHILD_MEM_WRITE:
		return diosix_child_mem(file, fid, uarg);
	case DIOSIX_IOC_DEVICE_STATE:
		return diosix_device_state(file, uarg);
	default:
		return -ENOTTY;
	}
}

static int diosix_open(struct inode *inode, struct file *file)
{
	struct diosix_file *df;
	int err;

	/* Mode 0600 already limits it to root; this also covers a chmod. */
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	err = nonseekable_open(inode, file);
	if (err)
		return err;
	df = kzalloc(sizeof(*df), GFP_KERNEL);
	if (!df)
		return -ENOMEM;
	mutex_init(&df->xfer_lock);
	file->private_data = df;
	return 0;
}

static int diosix_release(struct inode *inode, struct file *file)
{
	struct diosix_file *df = file->private_data;

	kfree(df->xfer);
	kfree(df);
	return 0;
}

static __poll_t diosix_poll(struct file *file, poll_table *wait)
{
	struct diosix_file *df = file->private_data;
	bool ready;

	poll_wait(file, &diosix_event_wq, wait);
	if (READ_ONCE(df->doorbell))
		ready = atomic_read(&diosix_irq_seq) != atomic_read(&df->seen);
	else
		ready = atomic_read(&diosix_events_ready);
	return ready ? EPOLLIN | EPOLLRDNORM : 0;
}

static const struct file_operations diosix_fops = {
	.owner		= THIS_MODULE,
	.open		= diosix_open,
	.release	= diosix_release,
	.poll		= diosix_poll,
	.unlocked_ioctl	= diosix_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
};

static irqreturn_t diosix_event_irq(int irq, void *data)
{
	atomic_inc(&diosix_irq_seq);
	atomic_set(&diosix_events_ready, 1);
	wake_up_interruptible(&diosix_event_wq);
	return IRQ_HANDLED;
}

static int diosix_events_probe(struct platform_device *pdev)
{
	int irq = platform_get_irq(pdev, 0);
	int err;

	if (irq < 0)
		return irq;
	err = devm_request_irq(&pdev->dev, irq, diosix_event_irq, 0,
			       "diosix-events", NULL);
	if (err)
		return err;
	dev_info(&pdev->dev, "events on irq %d\n", irq);
	return 0;
}

static const struct of_device_id diosix_events_of[] = {
	{ .compatible = "diosix,hypervisor" },
	{ }
};
MODULE_DEVICE_TABLE(of, diosix_events_of);

static struct platform_driver diosix_events_driver = {
	.probe	= diosix_events_probe,
	.driver	= {
		.name		= "diosix-events",
		.of_match_table	= diosix_events_of,
	},
};

static struct miscdevice diosix_dev = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= "diosix",
	.fops	= &diosix_fops,
	.mode	= 0600,
};

static int __init diosix_init(void)
{
	long present = sbi_probe_extension(DIOSIX_SBI_EID);
	int err;

	err = misc_register(&diosix_dev);
	if (err)
		return err;
	err = platform_driver_register(&diosix_events_driver);
	if (err) {
		misc_deregister(&diosix_dev);
		return err;
	}
	/*
	 * Registered either way: without the extension every call answers
	 * NOT_SUPPORTED, which the tools report as such.
	 */
	pr_info("diosix: /dev/diosix ready; SBI extension 0x%x %s\n",
		DIOSIX_SBI_EID, present > 0 ? "present" : "not advertised");
	return 0;
}

static void __exit diosix_exit(void)
{
	platform_driver_unregister(&diosix_events_driver);
	misc_deregister(&diosix_dev);
}

module_init(diosix_init);
module_exit(diosix_exit);

MODULE_DESCRIPTION("Diosix hypervisor interface (/dev/diosix)");
MODULE_LICENSE("Dual MIT/GPL");
